"""The steps both workflows share, the stage ledger, and the retraining job's state (lock, watermark)."""
