"""Model-free numpy data: tokenizers, text sources, packing and resumable batch iterators."""
