"""Archive indexing pipeline (discover, read, encode, write, resume, scale out)."""
