"""The offline testbed: a small world, its tokenizer, a pretrained Llama-architecture model, and its datasets."""
