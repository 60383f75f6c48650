"""What a person reads: the terminal's tables (terminal.py) and the HTML report with plotly charts
(html_report.py), for plans, estimates, validations and measurements.

May import: every room of the planner.
"""
