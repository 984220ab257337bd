"""sclora: knowledge-preserving LoRA fine-tuning (SC-LoRA, arXiv 2505.23724) as a production pipeline."""

__version__ = "0.1.0"
