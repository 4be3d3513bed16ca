"""What every way of applying a model (`cxr14 predict`, the MLflow model) calls things.

Both name the operating points alike and write a finding's call as "<finding> positive", so a
table from `cxr14 predict` and an answer of `mlflow models serve` read the same way.
"""

OPERATING_POINTS = ("max_f1", "sensitivity")  # validation-chosen: highest F1; highest threshold reaching a sensitivity
DEFAULT_OPERATING_POINT = "max_f1"
DEFAULT_SENSITIVITY = 0.9  # = params.yaml evaluate.sensitivity_target, the report's second operating point
POSITIVE_SUFFIX = " positive"  # column "<finding> positive": the score reached the finding's threshold
