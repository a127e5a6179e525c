package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
)

// maxLine bounds one JSON line: a record at MaxRecordSize plus its seq and hash.
const maxLine = MaxRecordSize + 1024

// ReadJSONLines parses JSON lines as Export writes them. Each line must be a record in exactly the
// encoding Export gives it; blank lines and a trailing "\r" are tolerated. It does not verify the
// chain: pass the result to VerifyRecords.
func ReadJSONLines(r io.Reader) ([]Record, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	var rs []Record
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSuffix(sc.Bytes(), []byte("\r"))
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		rec, err := decode(line)
		if err != nil {
			return nil, fmt.Errorf("audit: line %d: %w", n, err)
		}
		rs = append(rs, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("audit: read lines: %w", err)
	}
	return rs, nil
}

// writeJSONLine writes r (with its Seq) as one line.
func writeJSONLine(w io.Writer, r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("audit: encode record %d: %w", r.Seq, err)
	}
	if _, err := w.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("audit: write record %d: %w", r.Seq, err)
	}
	return nil
}
