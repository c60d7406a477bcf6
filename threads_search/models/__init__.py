"""Models: slide encoders (a bag of patch features → a slide embedding), molecular encoders (RNA,
DNA), the :class:`~threads_search.models.threads_model.ThreadsModel` joining them and its bundle
on disk (``bundle``: ``build_model``, ``save_model``, ``load_model``). Patch encoders (image →
feature) are ``threads_search.patch_encoders``."""
