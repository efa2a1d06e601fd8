"""The declarative topology and how to reach the cluster it describes."""
