import numpy as np
import pytest

from cxr14.labels import LABEL_INDEX, LABELS, NO_FINDING, UnknownFindingError, encode_findings


def test_fixed_order_matches_seed():
    assert len(LABELS) == 15
    assert LABELS[0] == "Cardiomegaly" and LABELS[-1] == NO_FINDING
    assert LABELS.index("Effusion") == 2 and LABELS.index("Mass") == 8


def test_encode_findings_multi_hot():
    vector = encode_findings("Mass|Effusion")
    assert vector.dtype == np.uint8
    assert np.flatnonzero(vector).tolist() == [2, 8]
    assert np.flatnonzero(encode_findings(NO_FINDING)).tolist() == [LABEL_INDEX[NO_FINDING]]


def test_unknown_finding_names_itself_and_location():
    with pytest.raises(UnknownFindingError, match=r"'Infiltrate'.*Data_Entry_2017.csv line 7"):
        encode_findings("Effusion|Infiltrate", where="Data_Entry_2017.csv line 7")


def test_no_finding_cannot_combine():
    with pytest.raises(UnknownFindingError, match="No Finding"):
        encode_findings("No Finding|Mass")
