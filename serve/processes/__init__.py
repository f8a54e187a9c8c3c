"""The processes Easel starts (Triton, Prometheus, deadline workers): start, watch, restart, stop."""

from serve.processes.managed import STACK_ENV, ManagedProcess, ProcessStartError
from serve.processes.ports import free_port, free_ports
from serve.processes.supervisor import Supervisor

__all__ = ["STACK_ENV", "ManagedProcess", "ProcessStartError", "Supervisor", "free_port", "free_ports"]
