"""Evaluation: batch inference over a split or benchmark, the five accuracies, median/mean error, GeoScore."""
