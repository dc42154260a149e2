"""What a run shows: live TensorBoard monitoring (``monitor``), model profiles (``profile``), architecture tables
(``summary``) and the final report with its figures (``report``)."""
