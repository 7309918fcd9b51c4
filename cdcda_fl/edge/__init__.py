"""Edge devices: export a user's private LoRA adapter to llama.cpp's GGUF format and answer with it.

Nothing in this package imports torch at module level: a board that only answers (llama.cpp)
never loads PyTorch. See docs/edge.md.
"""
