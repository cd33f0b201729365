"""Files shipped with meminject: the offline ``demo`` dataset (written for this project)."""
