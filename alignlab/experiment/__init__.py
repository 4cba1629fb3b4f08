"""Experiments: a YAML of methods × sweeps → runs → the reward–KL frontier, win rates, tables."""

from alignlab.experiment.config import Experiment, ExperimentConfig, PlannedRun, load_experiment

__all__ = ["Experiment", "ExperimentConfig", "PlannedRun", "load_experiment"]
