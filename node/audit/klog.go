package audit

import (
	"log/slog"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// Tessera logs through klog, a process-wide logger that writes to stderr.
// A library should be silent unless asked, so this package sends klog
// nowhere; a program that wants Tessera's own logs calls
// RouteTesseraLogs. (Nothing else in Agent6 uses klog.)
func init() { klog.SetLogger(logr.Discard()) }

// RouteTesseraLogs sends Tessera's logs (klog, process-wide) to logger.
func RouteTesseraLogs(logger *slog.Logger) { klog.SetSlogLogger(logger) }
