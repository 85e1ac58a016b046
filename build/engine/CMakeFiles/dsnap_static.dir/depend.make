# Empty dependencies file for dsnap_static.
# This may be replaced when dependencies are built.
