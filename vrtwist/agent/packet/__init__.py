"""The agent's packet services: what it does with packets the datapath traps over pkt0.

Each service is sans-IO: a trapped frame (and the port data it needs) in, frames to send
back over pkt0 out. ``dispatch`` picks the service per trap as the real agent does.
"""
