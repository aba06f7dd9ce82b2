"""See the experiments: the dashboard at ``/api/ui``, the charts saved under ``plots/``, Optuna's tools.

- :mod:`.charts` chart models from the records; :mod:`.svg` (pure Python) and :mod:`.png` (matplotlib)
  draw them; :mod:`.pages` the HTML; :mod:`.routes` the ``APIRouter``.
- :mod:`.artifacts` and :mod:`.importance` run on the compute at the end of the driver; :mod:`.study`
  turns records into an Optuna study (importances, JournalStorage export). Those import Optuna; the
  Function App imports only :mod:`.routes` and what it needs (no Optuna, no plotting library).
"""
