"""The corpus stage: documents read and tokenized into fixed-length contexts."""
