"""Runs: a method's row, a model and the data it reads, prepared, fine-tuned and scored.

data (chat records -> token tensors), sources (params' data sources), models (load a model, the LoRA config),
train (resumable fine-tuning on the HF Trainer), curves (scoring along training), loss_logging (the loss into
MLflow).
"""
