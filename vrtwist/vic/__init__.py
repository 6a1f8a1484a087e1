"""VMware VIC guest channels: vSPC serial relay and guestinfo."""
