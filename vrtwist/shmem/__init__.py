"""Flow and bridge tables in memory-mapped files shared by datapath, agent and utilities."""
