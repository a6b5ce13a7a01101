"""Data files shipped inside fastnn (see README.md here): the embedded handwritten digits.

Read them with ``fastnn.datasets.load_digits()``.
"""
