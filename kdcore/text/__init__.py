"""Language models and text classifiers (tasks causal_lm and text_classification)."""
