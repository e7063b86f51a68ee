"""Step four of the data flow: log records with clear metadata and a payload sealed to the admins' keys.

The only package that imports SQLAlchemy.
"""
