"""The cohort schema: table names, required columns and their types, label and feature kinds.

All times are **hours since the stay's admission** (float). ``prediction_time`` is the moment a prediction is made;
nothing recorded after it may reach the features (see :meth:`healthfusion.data.cohort.Cohort.observable`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from healthfusion.data.errors import UnknownLabelError

SCHEMA_VERSION = 1

FEATURE_KINDS = ("numeric", "categorical")
LABEL_KINDS = ("binary", "multiclass", "multilabel", "regression")
DOMAIN_COLUMNS = ("site", "care_unit", "age_group", "sex", "ethnicity", "source")

# table -> {column: kind}; kinds: "str", "float", "int". Extra columns are allowed where noted in TABLE_OPEN.
TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "stays": {"stay_id": "str", "patient_id": "str", "prediction_time": "float"},
    "static": {"stay_id": "str"},
    "events": {"stay_id": "str", "time": "float", "variable": "str", "value": "float"},
    "codes": {"stay_id": "str", "time": "float", "system": "str", "code": "str"},
    "notes": {"stay_id": "str", "time": "float", "text": "str"},
    "images": {"stay_id": "str", "image_id": "str", "time": "float"},
    "labels": {"stay_id": "str"},
}
# tables whose rows carry a time and so are subject to the prediction-time guard
TIMED_TABLES = ("events", "codes", "notes", "images")
TABLES = tuple(TABLE_COLUMNS)


@dataclass(frozen=True)
class LabelSpec:
    """One prediction target.

    Parameters
    ----------
    name : str
        Column name in the labels table.
    kind : {"binary", "multiclass", "multilabel", "regression"}
        Binary labels are 0/1; multiclass labels are one of ``classes`` (stored as strings); multilabel labels are
        lists of ``classes``; regression labels are floats. Missing labels are null.
    classes : list of str, optional
        Required for multiclass and multilabel, forbidden otherwise.
    description : str
        Free text shown by ``healthfusion cohort describe``.
    """

    name: str
    kind: str
    classes: tuple[str, ...] | None = None
    description: str = ""

    def __post_init__(self):
        if self.kind not in LABEL_KINDS:
            raise ValueError(f"Label {self.name!r}: kind {self.kind!r} is not one of {', '.join(LABEL_KINDS)}.")
        needs_classes = self.kind in ("multiclass", "multilabel")
        if needs_classes and not self.classes:
            raise ValueError(f"Label {self.name!r} of kind {self.kind!r} needs its list of classes.")
        if not needs_classes and self.classes:
            raise ValueError(f"Label {self.name!r} of kind {self.kind!r} takes no classes; got {self.classes}.")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> LabelSpec:
        return cls(**d)


@dataclass
class CohortMeta:
    """What ``cohort.json`` holds besides the tables."""

    name: str = "cohort"
    feature_types: dict[str, str] = field(default_factory=dict)
    labels: list[LabelSpec] = field(default_factory=list)
    description: str = ""
    source: str = ""
    # a stays column or label -> the static columns it is computed from (care_unit <- ICUType): a task labelled
    # from that column must not see them as inputs (``healthfusion multitask`` excludes them)
    derived: dict[str, list[str]] = field(default_factory=dict)

    def label(self, name: str) -> LabelSpec:
        for spec in self.labels:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.labels) or "none"
        raise UnknownLabelError(f"Cohort {self.name!r} has no label {name!r}; it has: {known}.")

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "feature_types": dict(self.feature_types),
            "labels": [s.to_dict() for s in self.labels],
            "derived": {k: list(v) for k, v in self.derived.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> CohortMeta:
        return cls(
            name=d.get("name", "cohort"),
            feature_types=dict(d.get("feature_types", {})),
            labels=[LabelSpec.from_dict(x) for x in d.get("labels", [])],
            description=d.get("description", ""),
            source=d.get("source", ""),
            derived={k: list(v) for k, v in d.get("derived", {}).items()},
        )
