"""Package data: the official NIH ChestX-ray14 test list (test_list.txt.gz)."""
