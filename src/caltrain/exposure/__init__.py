"""Information-exposure assessment: what the host can reconstruct from the IR at each cut, and where to cut."""

from caltrain.exposure.assess import AssessmentReport, assess
from caltrain.exposure.config import ATTACKS, BUDGETS, TIERS, AssessConfig, Budget

__all__ = ["ATTACKS", "BUDGETS", "TIERS", "AssessConfig", "AssessmentReport", "Budget", "assess"]
