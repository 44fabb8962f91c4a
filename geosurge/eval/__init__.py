"""Evaluation: batch inference over a split or benchmark, the five accuracies, median/mean error, GeoScore.

- `evaluate`: a model in memory on a split of the shards (the full pipeline's register step).
- `benchmark`: any MLflow model URI on benchmark manifests, with Ray Data batch inference (`evaluate_model`).
- `promotion`: champion / challenger decisions and their record in the registry (`decide_promotion`, `promote`).
- `job`: the eval job as one call (`run_eval_job`), used by workflows/evaluate.py and the orchestration steps.
- `plots`: world map of predictions, accuracy against distance.
"""
