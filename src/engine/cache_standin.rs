//! TEMPORARY stand-in for `lora::cache::AdapterCache` (being written on main), with the same
//! API, so the engine builds and its tests run before the real cache lands. Deleted at merge.
//! It loads synchronously, but answers `Loading` to the first request for an id, so the
//! engine's "waiting for the adapter" path is exercised.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::Backend;
use crate::lora::{LoadedAdapter, LoraAdapter};
use crate::model::config::ModelConfig;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct CacheOptions {
    pub adapter_dir: Option<PathBuf>,
    pub max_host_adapters: usize,
    pub device_budget_bytes: usize,
    pub max_rank: usize,
}

pub enum AdapterStatus<B: Backend> {
    Ready(Arc<LoadedAdapter<B>>),
    Loading,
}

pub struct AdapterCache<B: Backend> {
    be: Arc<B>,
    model: ModelConfig,
    opts: CacheOptions,
    loaded: HashMap<String, Arc<LoadedAdapter<B>>>,
    seen: HashMap<String, ()>,
}

impl<B: Backend> AdapterCache<B> {
    pub fn new(be: Arc<B>, model: ModelConfig, opts: CacheOptions) -> Self {
        AdapterCache { be, model, opts, loaded: HashMap::new(), seen: HashMap::new() }
    }

    pub fn available(&self) -> Vec<String> {
        let Some(dir) = &self.opts.adapter_dir else { return vec![] };
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| rd.flatten().filter(|e| e.path().join("adapter_config.json").exists()).filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn request(&mut self, id: &str) -> Result<AdapterStatus<B>> {
        if let Some(a) = self.loaded.get(id) {
            return Ok(AdapterStatus::Ready(a.clone()));
        }
        let dir = match &self.opts.adapter_dir {
            Some(d) if !id.contains("..") && d.join(id).is_dir() => d.join(id),
            _ if std::path::Path::new(id).is_dir() => PathBuf::from(id),
            _ => return Err(Error::UnknownAdapter(id.to_string())),
        };
        if self.seen.insert(id.to_string(), ()).is_none() {
            return Ok(AdapterStatus::Loading);
        }
        let a = LoraAdapter::load(id, &dir, &self.model, self.opts.max_rank)?;
        let a = Arc::new(LoadedAdapter::upload(&*self.be, &a)?);
        self.loaded.insert(id.to_string(), a.clone());
        Ok(AdapterStatus::Ready(a))
    }

    pub fn resident(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self.loaded.iter().map(|(k, a)| (k.clone(), a.bytes)).collect();
        v.sort();
        v
    }
}
