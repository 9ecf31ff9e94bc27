"""Scoring at the bedside: patients as JSON (:mod:`.schemas`), per-patient live streams (:mod:`.streams`, usable
without HTTP) and the HTTP service (:mod:`.app`, the only module that imports FastAPI/uvicorn; extra ``serve``).

Every risk is computed by :meth:`healthfusion.models.scoring.ScoringModel.predict` on a cohort built from the JSON,
so a patient gets the same number from ``healthfusion predict``, the service and a stream.
"""
