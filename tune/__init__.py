"""Ray Tune glue around s2cnet.train: the hyperparameter sweep lives in tune/sweep.py."""
