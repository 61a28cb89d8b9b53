//! A bounds-checked big-endian cursor over a payload; every read checks the length
//! first and reports a truncation as [`Error::Malformed`] naming the field.

use crate::Error;

pub(crate) struct Reader<'a> {
    payload: &'static str,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(payload: &'static str, bytes: &'a [u8]) -> Self {
        Reader {
            payload,
            rest: bytes,
        }
    }

    fn truncated(&self, field: &str, want: usize) -> Error {
        Error::Malformed {
            payload: self.payload,
            reason: format!("{field} needs {want} bytes, {} left", self.rest.len()),
        }
    }

    /// Fails unless at least `n` bytes are left, without consuming them.
    pub(crate) fn need(&self, n: usize, field: &str) -> Result<(), Error> {
        if self.rest.len() < n {
            return Err(self.truncated(field, n));
        }
        Ok(())
    }

    pub(crate) fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], Error> {
        match self.rest.split_at_checked(n) {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(head)
            }
            None => Err(self.truncated(field, n)),
        }
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &str) -> Result<u8, Error> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u16(&mut self, field: &str) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &str) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &str) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A u32 BE length followed by that many bytes. The length is compared with the
    /// bytes left as a 64-bit number, so `0xFFFF_FFFF` is an overrun, never a wrap.
    pub(crate) fn blob(&mut self, field: &str) -> Result<&'a [u8], Error> {
        let len = self.u32(field)?;
        if u64::from(len) > self.rest.len() as u64 {
            return Err(Error::Malformed {
                payload: self.payload,
                reason: format!(
                    "{field} length {len} overruns the {} bytes left",
                    self.rest.len()
                ),
            });
        }
        self.take(len as usize, field)
    }

    /// Fails when bytes are left over.
    pub(crate) fn finish(&self) -> Result<(), Error> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error::Malformed {
                payload: self.payload,
                reason: format!("{} trailing bytes", self.rest.len()),
            })
        }
    }
}
