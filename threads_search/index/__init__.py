"""Deprecated name of :mod:`threads_search.vectorstore` (FAISS index types, builds, the
generation store); removed in the next release."""

from threads_search._deprecated import alias

alias(__name__, "threads_search.vectorstore", ("store", "streaming", "vectors", "writer"))
