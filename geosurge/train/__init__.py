"""Training: Ray Train (TorchTrainer) + DeepSpeed over Parquet shards streamed by Ray Data."""
