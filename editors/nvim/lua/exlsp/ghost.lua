-- Draws a suggestion as ghost text: its first line as inline virtual text at the cursor, the
-- other lines as virtual lines below the cursor line. Owns one extmark namespace.
local text = require("exlsp.text")

local M = {}

M.namespace = vim.api.nvim_create_namespace("exlsp_ghost")
M.highlight = "ExlspGhostText"

vim.api.nvim_set_hl(0, M.highlight, { link = "Comment", default = true })

---@param bufnr integer
function M.clear(bufnr)
  if vim.api.nvim_buf_is_valid(bufnr) then
    vim.api.nvim_buf_clear_namespace(bufnr, M.namespace, 0, -1)
  end
end

--- Shows `suggestion` at (row, col) (0-based row, byte column) in place of what was there.
---@param bufnr integer
---@param row integer
---@param col integer
---@param suggestion string
function M.show(bufnr, row, col, suggestion)
  M.clear(bufnr)
  if suggestion == "" then
    return
  end
  local lines = text.lines(suggestion)
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], M.highlight } }
  end
  local mark = {
    virt_text_pos = "inline",
    hl_mode = "combine",
    -- Above diagnostics' virtual text, which also sits at end of line.
    priority = 200,
  }
  if lines[1] ~= "" then
    mark.virt_text = { { lines[1], M.highlight } }
  end
  if #virt_lines > 0 then
    mark.virt_lines = virt_lines
  end
  vim.api.nvim_buf_set_extmark(bufnr, M.namespace, row, col, mark)
end

--- The suggestion text on screen in a buffer ("" when none), read back from the extmark.
---@param bufnr integer
---@return string
function M.shown(bufnr)
  local marks = vim.api.nvim_buf_get_extmarks(bufnr, M.namespace, 0, -1, { details = true })
  if #marks == 0 then
    return ""
  end
  local details = marks[1][4]
  local parts = { details.virt_text and details.virt_text[1][1] or "" }
  for _, virt_line in ipairs(details.virt_lines or {}) do
    parts[#parts + 1] = virt_line[1][1]
  end
  return table.concat(parts, "\n")
end

return M
