"""TACC's API gateway, Tapis v3: a thin client (`client`), the models it speaks at the boundary
(`models`) and the app definitions of the shipped agents (`apps`).

The scheduler on the Jobs API is `tacc_jobs.schedulers.tapis`; staging through the Files API is
`tacc_jobs.staging.tapis_files`; errors are `TapisRequestError` and `TapisUnavailableError` in
`tacc_jobs.exceptions`.
"""
