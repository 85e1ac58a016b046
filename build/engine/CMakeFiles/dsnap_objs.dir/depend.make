# Empty dependencies file for dsnap_objs.
# This may be replaced when dependencies are built.
