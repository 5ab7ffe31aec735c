"""Ray Tune glue around s2cnet.training.train: the hyperparameter sweep lives in tune/sweep.py."""
