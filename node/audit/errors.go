package audit

import "errors"

// Errors that callers branch on.
var (
	// ErrClosed reports a call on a closed Log. It wraps net.ErrClosed's
	// meaning: the log was shut down by its owner.
	ErrClosed = errors.New("audit: log closed")
	// ErrConfig reports a Config field that cannot be used.
	ErrConfig = errors.New("audit: bad config")
	// ErrVersion reports a record of a format version this code does not read.
	ErrVersion = errors.New("audit: unknown record version")
	// ErrRecord reports a record that is malformed, not canonical, or
	// carries a field its kind does not allow.
	ErrRecord = errors.New("audit: bad record")
	// ErrTooLarge reports a record over MaxRecordSize.
	ErrTooLarge = errors.New("audit: record too large")
	// ErrQueueFull reports a record Submit could not queue: the writer is
	// behind. The record is not in the log.
	ErrQueueFull = errors.New("audit: queue full")
	// ErrNotFound reports an index or resource the log does not hold.
	ErrNotFound = errors.New("audit: not found")
	// ErrCheckpoint reports a checkpoint that is malformed, for another
	// log, or not signed by the log's key.
	ErrCheckpoint = errors.New("audit: bad checkpoint")
	// ErrProof reports an inclusion or consistency proof that does not
	// verify, or tiles whose hashes do not match the checkpoint.
	ErrProof = errors.New("audit: proof does not verify")
	// ErrCommitment reports a commitment that does not open with the
	// given salt and value.
	ErrCommitment = errors.New("audit: commitment does not open")
	// ErrForbidden reports a read the authorize hook refused.
	ErrForbidden = errors.New("audit: forbidden")
)
