"""flmplan's command-line front end: a thin layer above measure (`profiles/`), decide (`planner/`) and
execute (`runtime/`). Nothing imports it; it checks what the user gave, calls the layers and prints.
"""
