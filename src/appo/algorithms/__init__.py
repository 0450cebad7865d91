"""The RL algorithms, one object each (docs/algorithms.md): `base.Algorithm` is the step's interface and
the GRPO family's behaviour; each module is one algorithm that reads top to bottom. `algorithm.name`
picks one (`appo.config.algorithm_class`); a user's own is `algorithm.name=pkg.module:Class`."""
