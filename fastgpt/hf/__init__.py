"""The Hugging Face bridge: models (``convert``), tokenizer files (``tokenizer_files``) and the
``export`` command. ``transformers`` is imported only by the functions that need it."""
