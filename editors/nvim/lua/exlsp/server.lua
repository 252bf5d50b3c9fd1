-- Registers and starts the language server: vim.lsp.config + vim.lsp.enable on Neovim 0.11+,
-- vim.lsp.start from a FileType autocmd on 0.10. One client serves every buffer and root, so one
-- resident model serves the whole editor.
local config = require("exlsp.config")

local M = {}

M.name = "exlsp"

--- The python of the active virtualenv or conda env, else python3 from PATH.
---@return string
local function active_python()
  for _, env in ipairs({ vim.env.VIRTUAL_ENV, vim.env.CONDA_PREFIX }) do
    if env and env ~= "" and vim.fn.executable(env .. "/bin/python") == 1 then
      return env .. "/bin/python"
    end
  end
  return "python3"
end

--- The command that starts the server: options.cmd, else `exlsp serve` from the active env or
--- PATH, else `python -m exlsp.cli serve`; `--model` appended when a model is configured.
---@param options exlsp.Options
---@return string[]
function M.resolve_cmd(options)
  if options.cmd then
    return vim.deepcopy(options.cmd)
  end
  local cmd
  local env = vim.env.VIRTUAL_ENV
  if env and env ~= "" and vim.fn.executable(env .. "/bin/exlsp") == 1 then
    cmd = { env .. "/bin/exlsp", "serve" }
  elseif vim.fn.executable("exlsp") == 1 then
    cmd = { "exlsp", "serve" }
  else
    cmd = { active_python(), "-m", "exlsp.cli", "serve" }
  end
  if options.model then
    vim.list_extend(cmd, { "--model", options.model })
  end
  return cmd
end

--- Client capabilities: the defaults plus inline completion, which 0.10-0.11 do not declare
--- themselves (the server falls back to textDocument/completion for clients without it).
local function capabilities()
  local caps = vim.lsp.protocol.make_client_capabilities()
  caps.textDocument.inlineCompletion = { dynamicRegistration = false }
  return caps
end

---@param options exlsp.Options
---@param on_attach fun(client: vim.lsp.Client, bufnr: integer)
---@return vim.lsp.ClientConfig
function M.client_config(options, on_attach)
  local settings = config.server_settings(options)
  return {
    name = M.name,
    cmd = M.resolve_cmd(options),
    filetypes = options.filetypes,
    root_markers = { ".git" },
    init_options = settings,
    settings = { exlsp = settings },
    capabilities = capabilities(),
    trace = options.trace,
    on_attach = on_attach,
    reuse_client = function(client, client_config)
      return client.name == client_config.name
    end,
  }
end

---@param options exlsp.Options
---@param on_attach fun(client: vim.lsp.Client, bufnr: integer)
function M.start(options, on_attach)
  local client_config = M.client_config(options, on_attach)
  if vim.lsp.config ~= nil and vim.fn.has("nvim-0.11") == 1 then
    vim.lsp.config(M.name, client_config)
    vim.lsp.enable(M.name)
    return
  end
  local group = vim.api.nvim_create_augroup("exlsp_start", { clear = true })
  local function start(bufnr)
    if vim.bo[bufnr].buftype ~= "" then
      return
    end
    if options.filetypes and not vim.tbl_contains(options.filetypes, vim.bo[bufnr].filetype) then
      return
    end
    local root = vim.fs.root(bufnr, ".git")
    vim.lsp.start(
      vim.tbl_extend("force", client_config, { root_dir = root }),
      { bufnr = bufnr, reuse_client = client_config.reuse_client }
    )
  end
  vim.api.nvim_create_autocmd("FileType", {
    group = group,
    callback = function(args)
      start(args.buf)
    end,
  })
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(bufnr) and vim.bo[bufnr].filetype ~= "" then
      start(bufnr)
    end
  end
end

--- The running exlsp client attached to a buffer (or any, without bufnr).
---@param bufnr integer|nil
---@return vim.lsp.Client|nil
function M.client(bufnr)
  return vim.lsp.get_clients({ name = M.name, bufnr = bufnr })[1]
end

-- Neovim 0.11 made client methods take self (client:request); 0.10 has plain functions.
local method_style = vim.fn.has("nvim-0.11") == 1

---@return boolean ok, integer|nil request_id
function M.request(client, method, params, handler, bufnr)
  if method_style then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

---@return table|nil response { result, err } or nil on timeout
function M.request_sync(client, method, params, timeout_ms, bufnr)
  if method_style then
    return client:request_sync(method, params, timeout_ms, bufnr)
  end
  return client.request_sync(method, params, timeout_ms, bufnr)
end

function M.notify(client, method, params)
  if method_style then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

--- Cancels a request if the client still has it pending (a finished one needs no cancel).
function M.cancel(client, request_id)
  local request = client.requests[request_id]
  if not (request and request.type == "pending") then
    return false
  end
  if method_style then
    client:cancel_request(request_id)
  else
    client.cancel_request(request_id)
  end
  return true
end

--- Settings changed at run time: tell the server (it also pulls workspace/configuration).
---@param options exlsp.Options
function M.notify_settings(options)
  local client = M.client()
  if client then
    client.settings = { exlsp = config.server_settings(options) }
    M.notify(client, "workspace/didChangeConfiguration", { settings = client.settings })
  end
end

return M
