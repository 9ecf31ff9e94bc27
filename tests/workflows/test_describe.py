"""`cohort describe` shares counts: domain values, classes and variables under 10 stays (or a prevalence from
under 10 events) show "<10"."""

from healthfusion.evaluation.disclosure import SUPPRESSED
from healthfusion.workflows.describe import describe_cohort
from tests.conftest import make_tiny_cohort


def test_small_domains_classes_and_variables_are_suppressed():
    tables = describe_cohort(make_tiny_cohort(n=24))
    domains = tables["domains"].set_index(["domain", "value"])
    assert domains.loc[("care_unit", "MICU"), "stays"] == 24  # one unit: every stay
    assert domains.loc[("care_unit", "MICU"), "death_prevalence"] == 0.5  # 12 deaths of 24
    assert domains.loc[("sex", "F"), "stays"] == SUPPRESSED and domains.loc[("sex", "M"), "stays"] == 16
    assert domains.loc[("sex", "M"), "death_prevalence"] == SUPPRESSED  # 8 deaths: too few to show
    phenotype = tables["labels"].set_index("label").loc["phenotype", "summary"]
    assert phenotype == f"sepsis: {SUPPRESSED}, cardiac: {SUPPRESSED}, other: {SUPPRESSED}"
    variables = tables["variables"].set_index("variable")
    assert variables.loc["HR", "stays_observed"] == 24
