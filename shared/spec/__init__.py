"""The experiment spec: one YAML or JSON document in AzureML's sweep-job vocabulary.

The same document runs on a local Dask cluster, on Azure VMs or as an AzureML sweep job, so its sections
use AzureML's names (``search_space``, ``sampling_algorithm``, ``early_termination``, ``limits``,
``objective``) and their semantics. Every model forbids unknown keys: a typo is an error, never a silently
ignored setting.

Search-space semantics (AzureML's, mapped to Optuna by :mod:`shared.hpo.search_space`):

- ``choice(values)``; ``randint(upper)``: integers in ``[0, upper)``;
- ``uniform(min_value, max_value)``; ``quniform``: ``round(uniform / q) * q``;
- ``loguniform(min_value, max_value)``: ``exp(uniform(min_value, max_value))``: **the bounds are
  exponents**, so values in ``[0.01, 0.3]`` are ``min_value: -4.6, max_value: -1.2``;
  ``qloguniform``: ``round(exp(uniform) / q) * q``;
- ``normal(mu, sigma)``, ``qnormal``; ``lognormal(mu, sigma)``: ``exp(normal(mu, sigma))``, ``qlognormal``.

Each name must be a hyperparameter of ``trial.model`` (``gpu_jobs.params``) that is not also fixed in
``trial.params``. Values are checked against the hyperparameter's valid range: every ``choice`` value, and
the whole achievable range of a bounded distribution (after q-rounding), so ``max_features:
uniform(0.2, 1.5)`` is rejected. Unbounded distributions (``normal``, ``lognormal`` and their q-forms)
are **clipped** to the valid range when sampled; one that can cross an *exclusive* lower bound (e.g.
``normal`` for ``learning_rate``, which must be > 0) is rejected because no clipped value would be valid.
For an integer hyperparameter every sampled value is **rounded to the nearest integer** (Python's
``round``), so ``uniform(1, 20)`` for ``max_depth`` is allowed and yields integers.

Sampling rules (AzureML's): ``grid`` needs only ``choice`` distributions; ``bayesian`` allows only
``choice``, ``uniform`` and ``quniform``. AzureML's bayesian sampling does not support early termination:
our local and VM engines allow the combination, the ``azureml`` backend rejects it. ``seed`` is honoured
by every algorithm here; on AzureML only random sampling takes a seed.

``limits.max_total_trials`` larger than a grid's size is capped at the grid size
(:meth:`ExperimentSpec.effective_total_trials`).

Modules: :mod:`~shared.spec.errors` (``SpecError``, the base model), :mod:`~shared.spec.search_space`
(distributions), :mod:`~shared.spec.sections` (dataset, trial, sampling, policies, limits, objective),
:mod:`~shared.spec.experiment` (``ExperimentSpec``: the shape, checked on every read, stored specs
included), :mod:`~shared.spec.admission` (the rules of the world now: the size catalogue, the concurrency
default, hosted mode; only at the edge), :mod:`~shared.spec.loading` (the one strict reader of documents)
and :mod:`~shared.spec.policy` (hosted mode's rules).
"""

from shared.spec.admission import admit
from shared.spec.errors import Loc, SpecError, format_loc
from shared.spec.experiment import ExperimentSpec
from shared.spec.loading import (
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    DocumentError,
    load_spec,
    parse_document,
    read_document,
    read_spec_file,
    validate_spec,
)
from shared.spec.policy import SpecPolicy
from shared.spec.pruning import BanditPolicy, MedianStoppingPolicy, TruncationSelectionPolicy
from shared.spec.search_space import (
    BAYESIAN_TYPES,
    GRID_TYPES,
    MAX_EXPONENT,
    Choice,
    Distribution,
    LogNormal,
    LogUniform,
    Normal,
    QLogNormal,
    QLogUniform,
    QNormal,
    QUniform,
    RandInt,
    Support,
    Uniform,
    finish_value,
    quantize,
    safe_exp,
)
from shared.spec.search_table import EarlyTermination
from shared.spec.sections import (
    BUILTIN_DATASETS,
    URI_SCHEMES,
    DatasetSpec,
    Limits,
    Objective,
    OutputSpec,
    RegisterModel,
    SamplingAlgorithm,
    TrialSpec,
)

__all__ = [
    "BAYESIAN_TYPES",
    "BUILTIN_DATASETS",
    "GRID_TYPES",
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_EXPONENT",
    "URI_SCHEMES",
    "BanditPolicy",
    "Choice",
    "DatasetSpec",
    "Distribution",
    "DocumentError",
    "EarlyTermination",
    "ExperimentSpec",
    "Limits",
    "Loc",
    "LogNormal",
    "LogUniform",
    "MedianStoppingPolicy",
    "Normal",
    "Objective",
    "OutputSpec",
    "QLogNormal",
    "QLogUniform",
    "QNormal",
    "QUniform",
    "RandInt",
    "RegisterModel",
    "SamplingAlgorithm",
    "SpecError",
    "SpecPolicy",
    "Support",
    "TrialSpec",
    "TruncationSelectionPolicy",
    "Uniform",
    "admit",
    "finish_value",
    "format_loc",
    "load_spec",
    "parse_document",
    "quantize",
    "read_document",
    "read_spec_file",
    "safe_exp",
    "validate_spec",
]
