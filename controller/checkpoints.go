package controller

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
)

// loadSeedKey reads the Ed25519 key whose seed path holds as a PEM block of type blockType, or creates one
// there (mode 0600) when the file does not exist.
func loadSeedKey(path, blockType string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		blk, _ := pem.Decode(b)
		if blk == nil || blk.Type != blockType || len(blk.Bytes) != ed25519.SeedSize {
			return nil, fmt.Errorf("controller: %s is not a %s; restore it from a backup of the data directory", path, blockType)
		}
		return ed25519.NewKeyFromSeed(blk.Bytes), nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("controller: %w", err)
	}
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: seed}), 0o600); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// AuditPublicKey is the public half of the key the controller signs audit checkpoints with.
func (s *Server) AuditPublicKey() ed25519.PublicKey { return s.auditKey.Public().(ed25519.PublicKey) }

// checkpoint signs the audit chain's head and appends the checkpoint, unless nothing was added since the last.
func (s *Server) checkpoint(ctx context.Context) error {
	_, _, err := s.gov.audit.AppendCheckpoint(ctx, s.controllerID.String(), s.auditKey)
	return err
}

// checkpointEvery signs a checkpoint every interval until ctx ends.
func (s *Server) checkpointEvery(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := s.checkpoint(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			s.log.Warn("audit checkpoint failed; retrying every interval", "interval", interval, "err", err)
			failing = true
		case err == nil && failing:
			s.log.Info("audit checkpoints resumed")
			failing = false
		}
	}
}

// verifyAudit verifies the whole audit stream, every checkpoint in it against the controller's key, and that
// it still holds the kept checkpoint after ("SEQ:HASH", optional).
func (s *Server) verifyAudit(ctx context.Context, after string) (api.AuditReport, error) {
	var opts audit.AnchorOptions
	if after != "" {
		a, err := audit.ParseAnchor(after)
		if err != nil {
			return api.AuditReport{}, failf(http.StatusBadRequest, api.CodeBadRequest, "%v", err)
		}
		opts.After = []audit.Anchor{a}
	}
	return auditReport(s.gov.audit.VerifyAnchored(ctx, s.AuditPublicKey(), opts)), nil
}

func auditReport(rep audit.AnchorReport, err error) api.AuditReport {
	out := api.AuditReport{Records: rep.Records, LastSeq: rep.LastSeq, LastHash: rep.LastHash, OK: err == nil, Checkpoints: rep.Checkpoints}
	if err != nil {
		out.Error = err.Error()
	}
	if rep.Checkpoints > 0 {
		out.LastCheckpoint = &api.AuditCheckpoint{Seq: rep.Last.Seq, Hash: rep.Last.Hash, Time: rep.Last.Time}
	}
	return out
}

// auditKey is what GET PathAuditKey answers.
func (s *Server) auditKeyView() (api.AuditKey, error) {
	b, err := audit.PublicKeyPEM(s.AuditPublicKey())
	if err != nil {
		return api.AuditKey{}, internal(err)
	}
	return api.AuditKey{KeyID: audit.KeyID(s.AuditPublicKey()), PublicKey: string(b)}, nil
}

// archiveAudit trims the audit trail through the record through names ("SEQ:HASH", as a verified export printed
// it), which a checkpoint signed with the controller's key must cover; c, the platform administrator, is the
// audit.archived record's actor.
func (s *Server) archiveAudit(ctx context.Context, c caller, through string) (api.AuditArchived, error) {
	a, err := audit.ParseAnchor(through)
	if err != nil {
		return api.AuditArchived{}, failf(http.StatusBadRequest, api.CodeBadRequest, "through: %v", err)
	}
	rec, err := s.gov.audit.Archive(ctx, c.id.String(), s.AuditPublicKey(), a)
	switch {
	case errors.Is(err, audit.ErrNotCheckpointed), errors.Is(err, audit.ErrAlreadyArchived), errors.Is(err, audit.ErrPurgeDenied):
		return api.AuditArchived{}, failf(http.StatusConflict, api.CodeConflict, "%s", strings.TrimPrefix(err.Error(), "audit: "))
	case err != nil:
		return api.AuditArchived{}, internal(fmt.Errorf("archive the audit trail through %s: %w", a, err))
	}
	d, err := audit.ParseArchived(rec)
	if err != nil {
		return api.AuditArchived{}, internal(err)
	}
	s.log.Info("audit trail archived", "through", a.Seq, "by", c.id.String(), "record", rec.Seq)
	// Sign the new beginning at once, so that the audit.archived record is anchored before anything else.
	if err := s.checkpoint(ctx); err != nil {
		s.log.Warn("audit checkpoint after the archive failed", "err", err)
	}
	return api.AuditArchived{Seq: d.Seq, Hash: d.Hash, CheckpointSeq: d.CheckpointSeq, CheckpointHash: d.CheckpointHash,
		RecordSeq: rec.Seq, RecordHash: rec.Hash, FirstSeq: d.Seq + 1}, nil
}
