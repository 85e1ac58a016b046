# Empty dependencies file for dsnap.
# This may be replaced when dependencies are built.
