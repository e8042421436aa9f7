"""The Track-On-R ensemble: several trackers ("teachers") on one video, one candidate chosen per frame and point.

``selection`` (pure choice rules), ``verifier`` (weights, model, the one runner), ``teachers`` (run the
teachers, candidate files, :func:`~pointtrack_cli.ensemble.teachers.choose`), ``tracker`` (the ensemble as a
:class:`~pointtrack_cli.trackers.base.Tracker` for ``--model ensemble:...``), ``run`` (the whole pipeline on a
video file: ``plan_ensemble``, ``EnsembleJob``, ``ensemble``, re-exported by :mod:`pointtrack_cli.api`), ``points``
(named points and anchors in an ensemble run: ``plan_ensemble_points``, also re-exported).
"""
