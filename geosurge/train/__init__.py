"""Training: Ray Train (TorchTrainer) + DeepSpeed over Parquet shards streamed by Ray Data (`trainer` the driver
side, `worker` the loop each worker runs, `augment` the training-split augmentation), and the offline segmenter's
training (`segmenter`)."""
