"""entangle: a lab for machine-learning systems.

Build a system of models as a graph, change one node, retrain everything downstream over seeds,
and explain with an error decomposition why the system got better or worse.
"""

__version__ = "0.1.0"
