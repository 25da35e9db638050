"""What cogseg writes, and when it may replace what is already there.

:mod:`cogseg_ml.outputs.owned_files` holds the rule for single files (a COCO file, a run's
report, a cache export): one is replaced only when it carries cogseg's marker. Output folders
follow their own rule, a manifest (:mod:`cogseg_ml.exports.folder_writer`).
"""
