"""One-off studies behind the notes in ``docs/results/``, each a CLI
(``python -m eval.studies.NAME --help``): the drive's cross-fitted settings (``readout_cv``),
the band metric's floor (``band_floor``), the pose's share of the lip score (``pose_share``),
a Talk render's mouth motion (``talk_motion``) and jaw-line crops of renders (``jawline``).
Nothing outside ``eval.studies`` imports them (the tests aside)."""
